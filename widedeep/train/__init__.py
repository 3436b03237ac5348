"""widedeep.train"""
