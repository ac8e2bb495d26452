"""The runtime and the user's entry: config, connecting to Ray, the actor topology, the pipeline, results, the CLI."""
