"""A package so that `python3 -m unittest discover -s scripts -t scripts` (make script-tests) finds its tests."""
