"""widedeep.features"""
