-- depends: provisioning_0001_init
-- ReserveFunds of an HTTP request is published straight after the request is stored, not
-- through the outbox: the request is the durable record. At start the service sends the
-- reservation of every request still awaiting funds again (a crash may have left it unsent);
-- the wallet claims reservations by request id, so a repeat changes nothing.
CREATE INDEX requests_awaiting_funds ON provisioning.requests (received_at)
    WHERE status = 'awaiting_funds';
