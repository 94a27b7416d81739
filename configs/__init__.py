"""The shipped dataset configs (TOML), found here when lsdflow is installed as a package."""
