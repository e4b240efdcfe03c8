"""Speed and memory benchmarks, and the straightforward forward they compare against."""
