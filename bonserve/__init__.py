"""The `bonserve` command (`bonserve/cli.py`): the top of the package map, above `server/`,
`training/` and `loadtests/`, which sit on `core/`."""
