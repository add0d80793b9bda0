"""What a serving process needs beyond the model and the page: its settings (`config`), which model it serves with the
offline fallback (`model_choice`), process tuning for many worker threads (`malloc`), and which calls take a GPU on
Hugging Face ZeroGPU Spaces (`spaces`)."""
