"""Named experiments: each module's `get_config()` returns the ConfigDict that `launch.py --experiment=NAME` runs."""
