"""What the commands share: the absl runner, shared flags and console quieting."""
