"""Talking to Tencent Cloud Infinite: request signing, response parsing, errors and the client."""
