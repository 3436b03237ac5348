"""widedeep.serve"""
