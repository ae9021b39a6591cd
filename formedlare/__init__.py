"""formedlare: the Mina meddelanden relay (förmedlare).

It takes a sender's signed delivery (``SignedDelivery``), verifies it, looks the recipient up in FaR, seals it
(``SealedDelivery``) and delivers it to the recipient's mailbox operator, buffering and retrying per operator.
It runs as its own HTTPS service (``formedlare.app``) or in-process (``formedlare.relay``); a sender talks to
either through :class:`formedlare.api.RelayApi`. It never imports ``kanalvaxel``.

``formedlare.mm`` is the Mina meddelanden XML layer both sides use: building, signing, sealing and verifying
deliveries in the MM canonical form, and the SOAP envelopes around them.
"""
