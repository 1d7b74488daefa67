"""The Grafana dashboards and Prometheus recording rules of aegis-mw export."""
