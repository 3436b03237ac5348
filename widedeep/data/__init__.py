"""widedeep.data"""
