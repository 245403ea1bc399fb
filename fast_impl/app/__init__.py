"""The application layer above the library: the `fast-impl` command line (`cli`), the training job (`plan`,
`train`) and the demo (`demo`). Nothing in the library imports it."""
