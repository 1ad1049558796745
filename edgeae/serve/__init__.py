"""Server side: the FastAPI decode service with micro-batching (app), the edge uploader (uploader, stdlib
only), Ray Serve (ray_app) and Triton repositories (triton). Nothing here is imported by the runtime."""
