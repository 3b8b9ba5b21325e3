"""The worker process side: everything that touches llama.cpp lives here."""
