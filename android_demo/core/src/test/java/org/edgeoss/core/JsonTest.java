package org.edgeoss.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import java.util.Arrays;
import java.util.List;
import java.util.Map;
import org.junit.Test;

public class JsonTest {
    @Test
    public void parsesAllValueKinds() throws Exception {
        Object v = Json.parse("{\"a\": [1, -2.5e3, true, false, null], \"b\": \"x\\n\\u00e9\\\"\","
                + " \"big\": 20914757184, \"c\": {}}", "t.json");
        Map<?, ?> m = (Map<?, ?>) v;
        assertEquals(Arrays.asList(1L, -2500.0, true, false, null), m.get("a"));
        assertEquals("x\n\u00e9\"", m.get("b"));
        assertEquals(20914757184L, m.get("big"));
        assertTrue(((Map<?, ?>) m.get("c")).isEmpty());
    }

    @Test
    public void reportsWhereTheTextIsBroken() {
        BundleException e = assertThrows(BundleException.class, () -> Json.parse("{\"a\": 1,\n }", "t.json"));
        assertEquals("t.json: invalid JSON at line 2, column 2: expected a string key", e.getMessage());
        e = assertThrows(BundleException.class, () -> Json.parse("{\"a\": 1} x", "t.json"));
        assertTrue(e.getMessage(), e.getMessage().endsWith("unexpected text after the JSON value"));
        e = assertThrows(BundleException.class, () -> Json.parse("{\"a\": 1, \"a\": 2}", "t.json"));
        assertTrue(e.getMessage(), e.getMessage().endsWith("duplicate key 'a'"));
    }

    @Test
    public void objNamesMissingAndMistypedKeysByPath() throws Exception {
        Json.Obj o = Json.parseObject("{\"m\": {\"n\": \"7\"}, \"l\": [{\"k\": 1}]}", "t.json");
        BundleException e = assertThrows(BundleException.class, () -> o.obj("m").lng("n"));
        assertEquals("t.json: 'm.n' must be an integer", e.getMessage());
        e = assertThrows(BundleException.class, () -> o.obj("m").lng("gone"));
        assertEquals("t.json: missing required key 'm.gone'", e.getMessage());
        List<Json.Obj> l = o.objects("l");
        e = assertThrows(BundleException.class, () -> l.get(0).str("k"));
        assertEquals("t.json: 'l[0].k' must be a string", e.getMessage());
        assertEquals(5L, o.lng("absent", 5L));
    }
}
