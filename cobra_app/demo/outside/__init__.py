"""The outside check: an estimate of how the demo model does on pictures and wordings it was not built from (a second
renderer, `render`, and questions worded apart from the training grammar, `questions`)."""
