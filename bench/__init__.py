"""`make bench`: labkit measured against the real tools, in the same run, as ratios."""
