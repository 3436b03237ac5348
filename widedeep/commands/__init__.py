"""One module per CLI job; see ``widedeep.cli`` for the protocol each module follows."""
