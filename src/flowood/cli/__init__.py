"""The flowood command line."""
