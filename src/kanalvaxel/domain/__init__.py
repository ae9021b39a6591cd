"""The pure core: what a shipment is and which channel the rules choose. No I/O here."""
