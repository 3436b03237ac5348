"""widedeep.retrieval"""
