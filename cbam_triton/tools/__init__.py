"""Developer tools: ahead-of-time compilation and the kernel report."""
