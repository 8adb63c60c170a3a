package org.edgeoss.core;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A small strict JSON reader (RFC 8259) for manifest.json and plan.json.
 *
 * <p>Values become {@code Map<String, Object>} (key order kept), {@code List<Object>}, {@code String},
 * {@code Long} (integers that fit), {@code Double} (other numbers), {@code Boolean} or {@code null}.
 * {@link Obj} reads typed fields and names the file and key in every error.
 */
public final class Json {
    private final String text;
    private final String source;
    private int pos;

    private Json(String text, String source) {
        this.text = text;
        this.source = source;
    }

    /** Parses a whole document; {@code source} (a file name) prefixes error messages. */
    public static Object parse(String text, String source) throws BundleException {
        Json p = new Json(text, source);
        p.skipSpace();
        Object value = p.value();
        p.skipSpace();
        if (p.pos != text.length()) throw p.error("unexpected text after the JSON value");
        return value;
    }

    /** Parses a document whose top level must be an object. */
    public static Obj parseObject(String text, String source) throws BundleException {
        Object value = parse(text, source);
        if (!(value instanceof Map)) throw new BundleException(source + ": top level must be a JSON object");
        return new Obj(asMap(value), source, "");
    }

    private Object value() throws BundleException {
        if (pos >= text.length()) throw error("unexpected end of input");
        char c = text.charAt(pos);
        switch (c) {
            case '{': return object();
            case '[': return array();
            case '"': return string();
            case 't': return literal("true", Boolean.TRUE);
            case 'f': return literal("false", Boolean.FALSE);
            case 'n': return literal("null", null);
            default:
                if (c == '-' || (c >= '0' && c <= '9')) return number();
                throw error("unexpected character '" + c + "'");
        }
    }

    private Map<String, Object> object() throws BundleException {
        Map<String, Object> map = new LinkedHashMap<>();
        pos++;
        skipSpace();
        if (peek('}')) return map;
        while (true) {
            skipSpace();
            if (pos >= text.length() || text.charAt(pos) != '"') throw error("expected a string key");
            String key = string();
            skipSpace();
            expect(':');
            skipSpace();
            if (map.containsKey(key)) throw error("duplicate key '" + key + "'");
            map.put(key, value());
            skipSpace();
            if (peek('}')) return map;
            expect(',');
        }
    }

    private List<Object> array() throws BundleException {
        List<Object> list = new ArrayList<>();
        pos++;
        skipSpace();
        if (peek(']')) return list;
        while (true) {
            skipSpace();
            list.add(value());
            skipSpace();
            if (peek(']')) return list;
            expect(',');
        }
    }

    private String string() throws BundleException {
        StringBuilder sb = new StringBuilder();
        pos++;
        while (true) {
            if (pos >= text.length()) throw error("unterminated string");
            char c = text.charAt(pos++);
            if (c == '"') return sb.toString();
            if (c < 0x20) throw error("control character in string");
            if (c != '\\') {
                sb.append(c);
                continue;
            }
            if (pos >= text.length()) throw error("unterminated escape");
            char e = text.charAt(pos++);
            switch (e) {
                case '"': case '\\': case '/': sb.append(e); break;
                case 'b': sb.append('\b'); break;
                case 'f': sb.append('\f'); break;
                case 'n': sb.append('\n'); break;
                case 'r': sb.append('\r'); break;
                case 't': sb.append('\t'); break;
                case 'u':
                    if (pos + 4 > text.length()) throw error("short \\u escape");
                    try {
                        sb.append((char) Integer.parseInt(text.substring(pos, pos + 4), 16));
                    } catch (NumberFormatException ex) {
                        throw error("bad \\u escape");
                    }
                    pos += 4;
                    break;
                default: throw error("bad escape '\\" + e + "'");
            }
        }
    }

    private Object number() throws BundleException {
        int start = pos;
        peek('-');
        if (!digits()) throw error("bad number");
        boolean integral = true;
        if (peek('.')) {
            integral = false;
            if (!digits()) throw error("bad number");
        }
        if (pos < text.length() && (text.charAt(pos) == 'e' || text.charAt(pos) == 'E')) {
            integral = false;
            pos++;
            if (!peek('+')) peek('-');
            if (!digits()) throw error("bad number");
        }
        String s = text.substring(start, pos);
        if (integral) {
            try {
                return Long.parseLong(s);
            } catch (NumberFormatException tooBig) {
                return Double.parseDouble(s);
            }
        }
        return Double.parseDouble(s);
    }

    private boolean digits() {
        int start = pos;
        while (pos < text.length() && text.charAt(pos) >= '0' && text.charAt(pos) <= '9') pos++;
        return pos > start;
    }

    private Object literal(String word, Object value) throws BundleException {
        if (!text.startsWith(word, pos)) throw error("unexpected literal");
        pos += word.length();
        return value;
    }

    private boolean peek(char c) {
        if (pos < text.length() && text.charAt(pos) == c) {
            pos++;
            return true;
        }
        return false;
    }

    private void expect(char c) throws BundleException {
        if (!peek(c)) throw error("expected '" + c + "'");
    }

    private void skipSpace() {
        while (pos < text.length()) {
            char c = text.charAt(pos);
            if (c != ' ' && c != '\t' && c != '\n' && c != '\r') return;
            pos++;
        }
    }

    private BundleException error(String what) {
        int line = 1;
        int col = 1;
        for (int i = 0; i < pos && i < text.length(); i++) {
            if (text.charAt(i) == '\n') {
                line++;
                col = 1;
            } else {
                col++;
            }
        }
        return new BundleException(source + ": invalid JSON at line " + line + ", column " + col + ": " + what);
    }

    /**
     * JSON text of a value made of Maps (String keys, written in their order), Lists, Strings, Numbers, Booleans
     * and null. A double that is not finite is written as null.
     */
    public static String write(Object value) {
        StringBuilder sb = new StringBuilder();
        write(value, sb, "");
        return sb.append('\n').toString();
    }

    private static void write(Object value, StringBuilder sb, String indent) {
        if (value == null || value instanceof Double && !Double.isFinite((Double) value)) {
            sb.append("null");
        } else if (value instanceof String) {
            sb.append(quote((String) value));
        } else if (value instanceof Number || value instanceof Boolean) {
            sb.append(value);
        } else if (value instanceof Map) {
            String inner = indent + "  ";
            sb.append('{');
            String sep = "\n";
            for (Map.Entry<?, ?> e : ((Map<?, ?>) value).entrySet()) {
                sb.append(sep).append(inner).append(quote(String.valueOf(e.getKey()))).append(": ");
                write(e.getValue(), sb, inner);
                sep = ",\n";
            }
            sb.append(sep.equals("\n") ? "}" : "\n" + indent + "}");
        } else if (value instanceof List) {
            sb.append('[');
            String sep = "";
            for (Object item : (List<?>) value) {
                sb.append(sep);
                write(item, sb, indent);
                sep = ", ";
            }
            sb.append(']');
        } else {
            throw new IllegalArgumentException("cannot write " + value.getClass().getName() + " as JSON");
        }
    }

    /** {@code text} as a JSON string literal (quotes, backslashes and control characters escaped). */
    public static String quote(String text) {
        StringBuilder sb = new StringBuilder("\"");
        for (int i = 0; i < text.length(); i++) {
            char c = text.charAt(i);
            if (c == '"' || c == '\\') sb.append('\\').append(c);
            else if (c < 0x20) sb.append(String.format("\\u%04x", (int) c));
            else sb.append(c);
        }
        return sb.append('"').toString();
    }

    @SuppressWarnings("unchecked")
    private static Map<String, Object> asMap(Object value) {
        return (Map<String, Object>) value;
    }

    /** A JSON object with typed, tolerant accessors: unknown keys are ignored, missing required keys fail. */
    public static final class Obj {
        private final Map<String, Object> map;
        private final String source;
        private final String prefix;

        Obj(Map<String, Object> map, String source, String prefix) {
            this.map = map;
            this.source = source;
            this.prefix = prefix;
        }

        public boolean has(String key) {
            return map.get(key) != null;
        }

        public Obj obj(String key) throws BundleException {
            return new Obj(asMap(require(key, Map.class, "an object")), source, prefix + key + ".");
        }

        /** The object at {@code key}, or an empty one when the key is absent. */
        public Obj objOrEmpty(String key) throws BundleException {
            return has(key) ? obj(key) : new Obj(new LinkedHashMap<>(), source, prefix + key + ".");
        }

        public String str(String key) throws BundleException {
            return (String) require(key, String.class, "a string");
        }

        public String str(String key, String fallback) throws BundleException {
            return has(key) ? str(key) : fallback;
        }

        public long lng(String key) throws BundleException {
            return (Long) require(key, Long.class, "an integer");
        }

        public long lng(String key, long fallback) throws BundleException {
            return has(key) ? lng(key) : fallback;
        }

        public int integer(String key, int fallback) throws BundleException {
            long v = lng(key, fallback);
            if (v < Integer.MIN_VALUE || v > Integer.MAX_VALUE) throw fail(key, "is out of range: " + v);
            return (int) v;
        }

        /** A number (integer or not); {@code fallback} when absent. */
        public double num(String key, double fallback) throws BundleException {
            return has(key) ? ((Number) require(key, Number.class, "a number")).doubleValue() : fallback;
        }

        public boolean bool(String key) throws BundleException {
            return (Boolean) require(key, Boolean.class, "true or false");
        }

        public boolean bool(String key, boolean fallback) throws BundleException {
            return has(key) ? bool(key) : fallback;
        }

        /** The keys present (in file order). */
        public List<String> keys() {
            return new ArrayList<>(map.keySet());
        }

        /** Each element of an array of integers. */
        public List<Long> longs(String key) throws BundleException {
            List<?> list = (List<?>) require(key, List.class, "an array");
            List<Long> out = new ArrayList<>();
            for (int i = 0; i < list.size(); i++) {
                Object item = list.get(i);
                if (!(item instanceof Long)) throw fail(key + "[" + i + "]", "must be an integer");
                out.add((Long) item);
            }
            return out;
        }

        /** Each element of an array of objects. */
        public List<Obj> objects(String key) throws BundleException {
            List<?> list = (List<?>) require(key, List.class, "an array");
            List<Obj> out = new ArrayList<>();
            for (int i = 0; i < list.size(); i++) {
                Object item = list.get(i);
                if (!(item instanceof Map)) throw fail(key + "[" + i + "]", "must be an object");
                out.add(new Obj(asMap(item), source, prefix + key + "[" + i + "]."));
            }
            return out;
        }

        /** An error about {@code key} of this object, named by its full path. */
        public BundleException fail(String key, String what) {
            return new BundleException(source + ": '" + prefix + key + "' " + what);
        }

        private Object require(String key, Class<?> type, String typeName) throws BundleException {
            Object v = map.get(key);
            if (v == null) throw new BundleException(source + ": missing required key '" + prefix + key + "'");
            if (!type.isInstance(v)) throw fail(key, "must be " + typeName);
            return v;
        }
    }
}
