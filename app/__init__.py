"""FaaS-on-Ray domain: settings, schemas, runtimes, stores, events. Never imports ray."""
