"""labkit: container images from the kernel up."""
