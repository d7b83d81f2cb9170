"""graphrun: run diffusion node-graph workflows as data, in process."""
