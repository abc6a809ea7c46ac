"""`make bench`: the oauth3 stack measured against bare-aiohttp and naive baselines in one run."""
