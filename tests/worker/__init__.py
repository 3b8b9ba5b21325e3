"""What the worker does with llama.cpp: batches, text, threads, flash, caches, templates, images, embeddings."""
