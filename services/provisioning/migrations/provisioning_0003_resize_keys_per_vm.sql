-- depends: provisioning_0002_awaiting_funds
-- A resize's Idempotency-Key names a resize of one VM (POST /vms/{id}/resize; its request id
-- is derived from the VM and the key), so the same key may resize two VMs of one
-- organisation. Unique per organisation, the second resize's row was silently not stored.
ALTER TABLE provisioning.requests
    DROP CONSTRAINT requests_organisation_id_kind_idempotency_key_key;
CREATE UNIQUE INDEX requests_create_key ON provisioning.requests (organisation_id, idempotency_key)
    WHERE kind = 'create';
CREATE UNIQUE INDEX requests_resize_key ON provisioning.requests (vm_id, idempotency_key)
    WHERE kind = 'resize';
