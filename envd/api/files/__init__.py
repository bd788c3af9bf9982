"""The plain HTTP file endpoints: `GET /files`, `POST /files`, `POST /files/compose`."""
