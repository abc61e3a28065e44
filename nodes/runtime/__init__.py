"""What the nodes put into ComfyUI and call at run time: the patched MODEL (reference attention, guidance,
the reference cache), the sampler and scheduler, the weights and model folders, face detectors, and the
node ids and error type every node shares. The node classes themselves are the modules of `nodes/`."""
