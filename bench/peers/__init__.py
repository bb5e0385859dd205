"""Reference servers the service is measured against: a bare Django app and a naive Flask+GridFS app."""
