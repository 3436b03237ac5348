"""widedeep.model"""
