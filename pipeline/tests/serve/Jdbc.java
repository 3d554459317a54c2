// A real JDBC client (pgjdbc, Debian's libpostgresql-jdbc-java) against `sluice serve`,
// doing what DBeaver and Metabase do on connecting and querying: the metadata calls,
// a plain and a prepared statement, the column labels and types, a statement
// cancelled with Statement.cancel() (a Postgres CancelRequest) and by
// setQueryTimeout, and the refusals. Run as a single-file program:
//
//   java -cp /usr/share/java/postgresql.jar Jdbc.java PORT USER TOKEN
//
// It prints one `key=value` line per observation; the Rust test compares them with
// the lake read independently. It exits 0 unless the connection itself fails.

import java.sql.*;
import java.util.*;

public class Jdbc {
    static void say(String key, Object value) {
        System.out.println(key + "=" + value);
    }

    static String state(SQLException e) {
        return e.getSQLState() + " " + e.getMessage().replace('\n', ' ');
    }

    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://127.0.0.1:" + args[0] + "/lake?sslmode=disable&connectTimeout=10";
        Properties props = new Properties();
        props.setProperty("user", args[1]);
        props.setProperty("password", args[2]);
        props.setProperty("ApplicationName", "DBeaver 24.3.0 - Main");
        try (Connection conn = DriverManager.getConnection(url, props)) {
            DatabaseMetaData meta = conn.getMetaData();
            say("product", meta.getDatabaseProductName() + " " + meta.getDatabaseMajorVersion());
            say("read_only", conn.isReadOnly());
            List<String> schemas = new ArrayList<>();
            try (ResultSet rs = meta.getSchemas()) {
                while (rs.next()) schemas.add(rs.getString("TABLE_SCHEM"));
            }
            say("schemas", String.join(",", schemas));
            List<String> tables = new ArrayList<>();
            try (ResultSet rs = meta.getTables(null, null, "%", new String[] {"TABLE"})) {
                while (rs.next()) tables.add(rs.getString("TABLE_SCHEM") + "|" + rs.getString("TABLE_NAME"));
            }
            say("tables", String.join(",", tables));
            List<String> columns = new ArrayList<>();
            try (ResultSet rs = meta.getColumns(null, "analytics.learner", "engagement_daily", "%")) {
                while (rs.next()) columns.add(rs.getString("COLUMN_NAME") + ":" + rs.getString("TYPE_NAME"));
            }
            say("columns", String.join(",", columns));

            try (Statement st = conn.createStatement();
                 ResultSet rs = st.executeQuery("SELECT count(*), sum(interactions) FROM analytics.learner.engagement_daily")) {
                rs.next();
                ResultSetMetaData md = rs.getMetaData();
                say("count", rs.getLong(1));
                say("sum", rs.getLong(2));
                say("labels", md.getColumnLabel(1) + "," + md.getColumnLabel(2));
            } catch (SQLException e) {
                say("count_error", state(e));
            }
            try (PreparedStatement ps = conn.prepareStatement("SELECT count(*) FROM analytics.learner.engagement_daily WHERE user_id = ?")) {
                ps.setString(1, args[1]);
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    say("own_count", rs.getLong(1));
                }
            } catch (SQLException e) {
                say("own_count_error", state(e));
            }
            try (Statement st = conn.createStatement();
                 ResultSet rs = st.executeQuery("SELECT window_start, date, interactions, avg_latency_ms, user_id FROM analytics.learner.engagement_daily LIMIT 1")) {
                ResultSetMetaData md = rs.getMetaData();
                List<String> types = new ArrayList<>();
                for (int i = 1; i <= md.getColumnCount(); i++) types.add(md.getColumnTypeName(i));
                say("types", String.join(",", types));
                if (rs.next()) say("first_window", rs.getTimestamp(1) != null);
            } catch (SQLException e) {
                say("types_error", state(e));
            }
            String cross = "SELECT count(*), max(a.requests + b.requests + c.requests) FROM monitoring.api_performance.request_response_times a, "
                + "monitoring.api_performance.request_response_times b, monitoring.api_performance.request_response_times c";
            try (Statement st = conn.createStatement()) {
                Thread canceller = new Thread(() -> {
                    try {
                        Thread.sleep(1500);
                        st.cancel();
                    } catch (Exception ignored) {
                    }
                });
                canceller.start();
                long started = System.nanoTime();
                try {
                    st.executeQuery(cross);
                    say("cancel", "not cancelled");
                } catch (SQLException e) {
                    say("cancel", state(e));
                    say("cancel_ms", (System.nanoTime() - started) / 1_000_000);
                }
                canceller.join();
            }
            try (Statement st = conn.createStatement()) {
                st.setQueryTimeout(2);
                long started = System.nanoTime();
                try {
                    st.executeQuery(cross);
                    say("query_timeout", "not stopped");
                } catch (SQLException e) {
                    say("query_timeout", state(e));
                    say("query_timeout_ms", (System.nanoTime() - started) / 1_000_000);
                }
            }
            try (Statement st = conn.createStatement()) {
                st.executeUpdate("INSERT INTO analytics.learner.engagement_daily (user_id) VALUES ('x')");
                say("insert", "accepted");
            } catch (SQLException e) {
                say("insert", state(e));
            }
            try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("SELECT 41 + 1")) {
                rs.next();
                say("after", rs.getInt(1));
            }
        }
    }
}
