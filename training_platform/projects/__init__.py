"""Projects: who works together, their GPU guarantee and limits, and their GPU-hours."""
