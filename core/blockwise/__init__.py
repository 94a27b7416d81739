"""The stage contract and the one runner that takes every stage through its lifecycle."""
