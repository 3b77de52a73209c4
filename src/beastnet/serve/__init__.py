"""The bundled price server (`beastnet serve`): a service built on beastnet's
public API like any other, with feeds, API keys and their store, configuration
and metrics."""
