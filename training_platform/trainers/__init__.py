"""Training programs that a launch plan starts in their own process (see `trl_train`)."""
