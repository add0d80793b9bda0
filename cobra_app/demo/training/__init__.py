"""Training the offline demo Cobra, stage by stage (`cobra_app.demo.train` is the command; docs/DEMO_MODEL.md the
recipe and its measurements)."""
