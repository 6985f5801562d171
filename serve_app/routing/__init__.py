"""The complexity router: Ray-free scorers and router artefacts, and its Serve deployment."""
