"""OCI registries: references (``oci://HOST[:PORT]/REPOSITORY``), credentials and the registry client."""
