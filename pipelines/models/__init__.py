"""Models: loading the base and its ControlNets, keeping them with a bound, the safety checker."""
