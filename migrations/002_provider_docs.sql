-- SPDX-License-Identifier: Apache-2.0
-- How the admin API shows a provider: one jsonb document per row, built here so that reads,
-- lists and the RETURNING of writes all show exactly the same thing. The credential itself is
-- never part of it; only its hint is.

CREATE FUNCTION provider_doc(p providers) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', p.id,
        'object', 'provider',
        'name', p.name,
        'kind', p.kind,
        'base_url', p.base_url,
        'format', p.format,
        'auth_style', p.auth_style,
        'auth_name', p.auth_name,
        'headers', p.extra_headers,
        'api_key_set', p.api_key_enc IS NOT NULL,
        'api_key_hint', p.api_key_hint,
        'api_version', p.api_version,
        'ca_file', p.ca_file,
        'insecure', p.insecure,
        'version', p.version,
        'created_at', p.created_at,
        'updated_at', p.updated_at)
$$;
