"""Looking inside a flow: the paper's analyses as numbers, figures and one HTML page."""
