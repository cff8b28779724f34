"""Reading inputs and writing results: image files, output folders, JSON records."""
