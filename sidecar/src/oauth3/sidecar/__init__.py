"""The sidecar: sole holder of the dstack socket, forwarding only GetQuote and Info."""
