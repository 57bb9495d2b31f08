# Sourced by test.sh: points TEST_POSTGRES_URL at a PostgreSQL database the tests may use.
# Uses trust auth on 127.0.0.1 where the server allows it; otherwise creates a password role.
export TEST_POSTGRES_URL="${TEST_POSTGRES_URL:-postgresql://postgres@127.0.0.1:5432/test}"
if ! .venv/bin/python - "$TEST_POSTGRES_URL" <<'PY' 2>/dev/null
import sys, psycopg
psycopg.connect(sys.argv[1], connect_timeout=3).close()
PY
then
  # A fresh Debian cluster has no trust auth: make a role with a password and its database.
  as_pg=(runuser -u postgres --)
  [[ "$(id -u)" != 0 ]] && as_pg=(sudo -u postgres)
  "${as_pg[@]}" psql -q -v ON_ERROR_STOP=1 <<'SQL' || true
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'vre_test') THEN
    CREATE ROLE vre_test LOGIN PASSWORD 'vre_test' CREATEDB;
  END IF;
END $$;
SQL
  "${as_pg[@]}" createdb -O vre_test vre_test 2>/dev/null || true
  export TEST_POSTGRES_URL="postgresql://vre_test:vre_test@127.0.0.1:5432/vre_test"
fi
