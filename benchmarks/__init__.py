"""Speed and memory benchmarks; never imported by the fewclip package."""
