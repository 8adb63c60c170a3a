package org.edgeoss.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import org.junit.Test;

public class BundlePlanTest {
    private static String failure(String planText) {
        return assertThrows(BundleException.class, () -> BundlePlan.parse(planText, "plan.json")).getMessage();
    }

    @Test
    public void parsesAFullPlanAndIgnoresUnknownKeys() throws Exception {
        BundlePlan p = BundlePlan.parse(TestBundles.PLAN, "plan.json");
        assertTrue(p.fits);
        assertEquals(7850000000L, p.totalBytes);
        assertEquals("pixel-9-pro", p.deviceName);
        assertEquals(8192, p.context);
        assertEquals(7.5, p.decodeTokensPerSecond, 0);
        assertEquals(1.2, p.ttftSeconds, 0);
    }

    @Test
    public void onlyTheRequiredKeysAreNeeded() throws Exception {
        BundlePlan p = BundlePlan.parse("{\"format\": \"edgeoss-plan\", \"version\": 1, \"fits\": false,"
                + " \"memory\": {\"total_bytes\": 123}}", "plan.json");
        assertEquals(false, p.fits);
        assertEquals(123L, p.totalBytes);
        assertEquals("", p.deviceName);
        assertTrue(Double.isNaN(p.decodeTokensPerSecond));
        assertTrue(Double.isNaN(p.ttftSeconds));
    }

    @Test
    public void missingOrWrongRequiredKeysFailClearly() {
        assertEquals("plan.json: missing required key 'memory.total_bytes'",
                failure(TestBundles.PLAN.replace("\"total_bytes\": 7850000000, ", "")));
        assertEquals("plan.json: missing required key 'fits'",
                failure(TestBundles.PLAN.replace("\"fits\": true,", "")));
        assertEquals("plan.json: missing required key 'version'",
                failure(TestBundles.PLAN.replace("\"version\": 1,", "")));
        assertEquals("plan.json: 'fits' must be true or false",
                failure(TestBundles.PLAN.replace("\"fits\": true", "\"fits\": \"yes\"")));
        assertEquals("plan.json: format is 'edgeoss-bundle', not 'edgeoss-plan'",
                failure(TestBundles.PLAN.replace("\"edgeoss-plan\"", "\"edgeoss-bundle\"")));
        assertTrue(failure(TestBundles.PLAN.replace("\"version\": 1", "\"version\": 3"))
                .startsWith("plan.json: plan version 3 is not supported"));
    }
}
