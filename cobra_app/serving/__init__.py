"""What a serving process needs beyond the model and the page: its settings (`config`), which model it serves with the
offline fallback (`model_choice`), and process tuning for many worker threads (`malloc`)."""
